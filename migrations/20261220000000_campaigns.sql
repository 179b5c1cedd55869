-- Campaigns: many outbound calls of one agent, dispatched under limits, with retries and a
-- do-not-call list.
-- `campaigns`: the agent, the from-number, the limits (max_concurrency, calls_per_second), the calling
--   window (`schedule`: {"days": [...], "start": "09:00", "end": "17:00"}, {} for always) in `timezone`,
--   the retry rules (`retry`: {"max_attempts", "delay_s", "on": [...]}) and `next_dial_at`, the rate
--   limit's clock: no dial of this campaign before it.
-- `campaign_contacts`: one row per number to call, with the CSV's other columns as `variables`; the
--   dispatcher claims due rows with `for update skip locked`, so any number of workers can dispatch.
-- `do_not_call`: numbers never dialed by a campaign.
-- Calls gain the campaign and the contact they were placed for.

create table if not exists public.campaigns (
  id uuid primary key default gen_random_uuid(),
  name text not null check (length(name) between 1 and 200),
  agent_id uuid not null references public.agents (id),
  from_number text,
  status text not null default 'draft' check (status in ('draft', 'running', 'paused', 'cancelled', 'completed')),
  max_concurrency integer not null default 3 check (max_concurrency between 1 and 1000),
  calls_per_second double precision not null default 1 check (calls_per_second > 0 and calls_per_second <= 100),
  schedule jsonb not null default '{}'::jsonb,
  timezone text not null default 'UTC',
  retry jsonb not null default '{}'::jsonb,
  next_dial_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  started_at timestamptz,
  completed_at timestamptz
);
create index if not exists campaigns_status_idx on public.campaigns (status);

create table if not exists public.campaign_contacts (
  id uuid primary key default gen_random_uuid(),
  campaign_id uuid not null references public.campaigns (id) on delete cascade,
  row_number integer not null,
  phone_number text not null,
  timezone text,
  variables jsonb not null default '{}'::jsonb,
  status text not null default 'pending' check (
    status in ('pending', 'calling', 'completed', 'failed', 'skipped', 'cancelled')
  ),
  attempts integer not null default 0 check (attempts >= 0),
  next_attempt_at timestamptz not null default now(),
  claimed_at timestamptz,
  last_call_id uuid references public.calls (id),
  last_outcome text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (campaign_id, phone_number)
);
create index if not exists campaign_contacts_due_idx
  on public.campaign_contacts (campaign_id, status, next_attempt_at, row_number);

create table if not exists public.do_not_call (
  number text primary key check (number ~ '^\+[1-9][0-9]{6,14}$'),
  reason text,
  source text not null default 'api',
  call_id uuid,
  created_at timestamptz not null default now()
);

alter table public.calls add column if not exists campaign_id uuid references public.campaigns (id);
alter table public.calls add column if not exists contact_id uuid references public.campaign_contacts (id);
create index if not exists calls_campaign_idx on public.calls (campaign_id, created_at desc);

alter table public.campaigns enable row level security;
alter table public.campaign_contacts enable row level security;
alter table public.do_not_call enable row level security;
grant all on table public.campaigns, public.campaign_contacts, public.do_not_call to service_role;
