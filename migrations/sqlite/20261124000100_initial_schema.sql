-- The embedded default's schema: the same tables as the PostgreSQL migration, in SQLite's types
-- (uuid and timestamps as text, jsonb as JSON text).

create table if not exists agents (
  id text primary key,
  name text not null check (length(name) between 1 and 200),
  prompt text not null,
  greeting text,
  voice text,
  language text not null default 'en',
  llm text not null default '{}',
  settings text not null default '{}',
  created_at text not null,
  updated_at text not null,
  deleted_at text
);

create table if not exists calls (
  id text primary key,
  agent_id text not null references agents (id),
  to_number text not null,
  from_number text,
  direction text not null default 'outbound',
  status text not null default 'queued' check (
    status in ('queued', 'initiated', 'ringing', 'in-progress',
               'completed', 'busy', 'failed', 'no-answer', 'canceled')
  ),
  duration integer check (duration is null or duration >= 0),
  metadata text not null default '{}',
  twilio_call_sid text unique,
  error text,
  created_at text not null,
  updated_at text not null,
  started_at text,
  ended_at text
);
create index if not exists calls_agent_created_idx on calls (agent_id, created_at desc);
create index if not exists calls_status_idx on calls (status);

create table if not exists transcripts (
  seq integer primary key autoincrement,
  id text not null unique,
  call_id text not null references calls (id) on delete cascade,
  speaker text not null check (speaker in ('agent', 'caller')),
  text text not null,
  timestamp text not null,
  metrics text not null default '{}'
);
create index if not exists transcripts_call_idx on transcripts (call_id, timestamp, seq);

create table if not exists call_analysis (
  id text primary key,
  call_id text not null unique references calls (id) on delete cascade,
  status text not null default 'completed' check (status in ('pending', 'completed', 'failed')),
  summary text,
  key_points text not null default '[]',
  sentiment text check (sentiment is null or sentiment in ('positive', 'neutral', 'negative')),
  outcome text,
  data text not null default '{}',
  error text,
  created_at text not null,
  updated_at text not null
);
