-- The same tables and columns as the PostgreSQL migration of this version, in SQLite's types
-- (uuid and timestamps as text, boolean as 0/1). SQLite has no regular expressions: the E.164 check
-- is spelled with glob (a plus, a first digit 1-9, then digits only, 7 to 15 digits in all).

create table if not exists phone_numbers (
  id text primary key,
  number text not null unique check (
    length(number) between 8 and 16 and number glob '+[1-9]*' and substr(number, 2) not glob '*[^0-9]*'
  ),
  agent_id text not null references agents (id),
  inbound_enabled integer not null default 1,
  created_at text not null,
  updated_at text not null
);
create index if not exists phone_numbers_agent_idx on phone_numbers (agent_id);

alter table calls add column answered_by text;
alter table calls add column transferred_to text;
alter table calls add column transferred_at text;
