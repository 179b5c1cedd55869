-- The same tables as the PostgreSQL migration of this version, in SQLite's types.
-- `relayx_jobs` is the embedded job runner's durable queue (a restart resumes pending jobs).

alter table call_analysis add column model text;
alter table call_analysis add column condensed integer not null default 0;
alter table call_analysis add column attempts integer not null default 0;
create index if not exists call_analysis_outcome_idx on call_analysis (outcome);
create index if not exists call_analysis_sentiment_idx on call_analysis (sentiment);

create table if not exists webhook_events (
  id text primary key,
  call_id text not null references calls (id) on delete cascade,
  type text not null check (type in ('call.started', 'call.ended', 'call.analyzed')),
  dedupe_key text not null unique,
  url text not null,
  payload text not null,
  status text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
  attempts integer not null default 0,
  last_error text,
  created_at text not null,
  updated_at text not null,
  delivered_at text
);
create index if not exists webhook_events_call_idx on webhook_events (call_id, created_at);

create table if not exists webhook_attempts (
  id text primary key,
  event_id text not null references webhook_events (id) on delete cascade,
  attempt integer not null check (attempt >= 1),
  status_code integer,
  error text,
  duration_ms integer,
  created_at text not null,
  unique (event_id, attempt)
);

create table if not exists relayx_jobs (
  id text primary key,
  task text not null,
  args text not null default '{}',
  dedupe_key text unique,
  status text not null default 'pending' check (status in ('pending', 'running', 'done', 'failed')),
  attempts integer not null default 0,
  run_at text not null,
  last_error text,
  created_at text not null,
  updated_at text not null
);
create index if not exists relayx_jobs_due_idx on relayx_jobs (status, run_at);
