-- The PostgreSQL migration of this version, in SQLite: a check constraint cannot be altered, so the
-- table is rebuilt with the new one (same columns, same rows, same index), inside the migration's
-- transaction. Nothing references transcripts, so no foreign key has to follow.

create table transcripts_new (
  seq integer primary key autoincrement,
  id text not null unique,
  call_id text not null references calls (id) on delete cascade,
  speaker text not null check (speaker in ('agent', 'caller', 'tool')),
  text text not null,
  timestamp text not null,
  metrics text not null default '{}'
);
insert into transcripts_new (seq, id, call_id, speaker, text, timestamp, metrics)
  select seq, id, call_id, speaker, text, timestamp, metrics from transcripts;
drop table transcripts;
alter table transcripts_new rename to transcripts;
create index if not exists transcripts_call_idx on transcripts (call_id, timestamp, seq);
