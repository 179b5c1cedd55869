"""Test support: real parts started locally, and fakes of what cannot run here (at the wire)."""
