-- SQLite has no roles: this version exists so both dialects record the same versions.
select 1;
