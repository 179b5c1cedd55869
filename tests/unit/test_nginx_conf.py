"""deploy/nginx/relayx.conf: nginx accepts it (rendered for loopback ports) and it keeps what makes
streams survive a full or draining gateway."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import nginx


def test_the_template_rendered_for_loopback_passes_nginx_t(tmp_path: Path) -> None:
    site = nginx.render(listen=18080, gateways=[nginx.Server(18001, weight=3), nginx.Server(18002)],
                        backend_port=18000, access_log=tmp_path / "access.log")
    assert "server 127.0.0.1:18001 weight=3 max_fails=1 fail_timeout=5s;" in site
    assert "server 127.0.0.1:18002 max_fails=0;" in site  # the readiness upstream keeps its own params
    assert "gateway-1" not in site and "backend:8000" not in site
    checked = nginx.check(tmp_path, nginx.write_config(tmp_path, site))
    assert checked.returncode == 0, checked.stderr


def test_the_template_moves_a_refused_upgrade_to_the_next_gateway() -> None:
    text = nginx.TEMPLATE.read_text()
    media = _location(text, "= /media")
    assert "proxy_next_upstream error timeout http_503;" in media
    assert "proxy_set_header Upgrade $http_upgrade;" in media
    assert "proxy_set_header Connection $relayx_connection_upgrade;" in media
    assert "proxy_http_version 1.1;" in media
    assert re.search(r"proxy_read_timeout (\d+)h;", media), "a call needs a long read timeout"
    gateways = re.search(r"upstream relayx_gateways \{(.*?)\}", text, re.DOTALL)
    assert gateways is not None
    assert "least_conn;" in gateways.group(1) and "zone " in gateways.group(1)  # all workers count together
    assert "return 404;" in _location(text, "= /metrics")  # never public
    assert "proxy_pass http://relayx_gateway_ready/ready;" in _location(text, "= /gateway/health")


def _location(text: str, name: str) -> str:
    found = re.search(rf"location {re.escape(name)} \{{(.*?)\n    \}}", text, re.DOTALL)
    assert found is not None, name
    return found.group(1)
