-- RelayX's tables: agents, calls, transcripts, call_analysis.
-- Row level security is enabled with no policy for anon/authenticated: only the service role
-- (Supabase's server key, which bypasses RLS) and the table owner (RelayX's own connection) can read
-- or write. Nothing is exposed to browser clients through PostgREST.

create table if not exists public.agents (
  id uuid primary key default gen_random_uuid(),
  name text not null check (length(name) between 1 and 200),
  prompt text not null,
  greeting text,
  voice text,
  language text not null default 'en',
  llm jsonb not null default '{}'::jsonb,
  settings jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  deleted_at timestamptz
);

create table if not exists public.calls (
  id uuid primary key default gen_random_uuid(),
  agent_id uuid not null references public.agents (id),
  to_number text not null,
  from_number text,
  direction text not null default 'outbound',
  status text not null default 'queued' check (
    status in ('queued', 'initiated', 'ringing', 'in-progress',
               'completed', 'busy', 'failed', 'no-answer', 'canceled')
  ),
  duration integer check (duration is null or duration >= 0),
  metadata jsonb not null default '{}'::jsonb,
  twilio_call_sid text unique,
  error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  started_at timestamptz,
  ended_at timestamptz
);
create index if not exists calls_agent_created_idx on public.calls (agent_id, created_at desc);
create index if not exists calls_status_idx on public.calls (status);

create table if not exists public.transcripts (
  id uuid primary key default gen_random_uuid(),
  seq bigint generated always as identity,
  call_id uuid not null references public.calls (id) on delete cascade,
  speaker text not null check (speaker in ('agent', 'caller')),
  text text not null,
  timestamp timestamptz not null default now(),
  metrics jsonb not null default '{}'::jsonb
);
create index if not exists transcripts_call_idx on public.transcripts (call_id, timestamp, seq);

create table if not exists public.call_analysis (
  id uuid primary key default gen_random_uuid(),
  call_id uuid not null unique references public.calls (id) on delete cascade,
  status text not null default 'completed' check (status in ('pending', 'completed', 'failed')),
  summary text,
  key_points jsonb not null default '[]'::jsonb,
  sentiment text check (sentiment is null or sentiment in ('positive', 'neutral', 'negative')),
  outcome text,
  data jsonb not null default '{}'::jsonb,
  error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

alter table public.agents enable row level security;
alter table public.calls enable row level security;
alter table public.transcripts enable row level security;
alter table public.call_analysis enable row level security;

grant all on table public.agents, public.calls, public.transcripts, public.call_analysis to service_role;
