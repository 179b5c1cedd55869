-- The PostgreSQL migration of this version, in SQLite (no row locks: one process dispatches).

create table if not exists campaigns (
  id text primary key,
  name text not null check (length(name) between 1 and 200),
  agent_id text not null references agents (id),
  from_number text,
  status text not null default 'draft' check (status in ('draft', 'running', 'paused', 'cancelled', 'completed')),
  max_concurrency integer not null default 3 check (max_concurrency between 1 and 1000),
  calls_per_second real not null default 1 check (calls_per_second > 0 and calls_per_second <= 100),
  schedule text not null default '{}',
  timezone text not null default 'UTC',
  retry text not null default '{}',
  next_dial_at text,
  created_at text not null,
  updated_at text not null,
  started_at text,
  completed_at text
);
create index if not exists campaigns_status_idx on campaigns (status);

create table if not exists campaign_contacts (
  id text primary key,
  campaign_id text not null references campaigns (id) on delete cascade,
  row_number integer not null,
  phone_number text not null,
  timezone text,
  variables text not null default '{}',
  status text not null default 'pending' check (
    status in ('pending', 'calling', 'completed', 'failed', 'skipped', 'cancelled')
  ),
  attempts integer not null default 0 check (attempts >= 0),
  next_attempt_at text not null,
  claimed_at text,
  last_call_id text references calls (id),
  last_outcome text,
  created_at text not null,
  updated_at text not null,
  unique (campaign_id, phone_number)
);
create index if not exists campaign_contacts_due_idx
  on campaign_contacts (campaign_id, status, next_attempt_at, row_number);

create table if not exists do_not_call (
  number text primary key,
  reason text,
  source text not null default 'api',
  call_id text,
  created_at text not null
);

alter table calls add column campaign_id text references campaigns (id);
alter table calls add column contact_id text references campaign_contacts (id);
create index if not exists calls_campaign_idx on calls (campaign_id, created_at);
