-- After the call: webhook events with every delivery attempt, the embedded job queue, and the
-- analysis row's provenance (model, whether the transcript had to be condensed, attempts).
-- On PostgreSQL the jobs themselves live in procrastinate's tables; `relayx_jobs` is the embedded
-- (SQLite) runner's queue and stays empty here, so both dialects keep one schema.

alter table public.call_analysis add column if not exists model text;
alter table public.call_analysis add column if not exists condensed boolean not null default false;
alter table public.call_analysis add column if not exists attempts integer not null default 0;
create index if not exists call_analysis_outcome_idx on public.call_analysis (outcome);
create index if not exists call_analysis_sentiment_idx on public.call_analysis (sentiment);

create table if not exists public.webhook_events (
  id uuid primary key,
  call_id uuid not null references public.calls (id) on delete cascade,
  type text not null check (type in ('call.started', 'call.ended', 'call.analyzed')),
  dedupe_key text not null unique,
  url text not null,
  payload jsonb not null,
  status text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
  attempts integer not null default 0,
  last_error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  delivered_at timestamptz
);
create index if not exists webhook_events_call_idx on public.webhook_events (call_id, created_at);

create table if not exists public.webhook_attempts (
  id uuid primary key,
  event_id uuid not null references public.webhook_events (id) on delete cascade,
  attempt integer not null check (attempt >= 1),
  status_code integer,
  error text,
  duration_ms integer,
  created_at timestamptz not null default now(),
  unique (event_id, attempt)
);

create table if not exists public.relayx_jobs (
  id uuid primary key,
  task text not null,
  args jsonb not null default '{}'::jsonb,
  dedupe_key text unique,
  status text not null default 'pending' check (status in ('pending', 'running', 'done', 'failed')),
  attempts integer not null default 0,
  run_at timestamptz not null,
  last_error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index if not exists relayx_jobs_due_idx on public.relayx_jobs (status, run_at);

alter table public.webhook_events enable row level security;
alter table public.webhook_attempts enable row level security;
alter table public.relayx_jobs enable row level security;
grant all on table public.webhook_events, public.webhook_attempts, public.relayx_jobs to service_role;
