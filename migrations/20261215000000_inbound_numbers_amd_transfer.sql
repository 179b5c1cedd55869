-- Inbound calls, answering-machine detection and transfers.
-- `phone_numbers`: the numbers callers dial, each answered by one agent while inbound is enabled
-- (Twilio's incoming-call webhook looks the dialed number up here). Calls gain Twilio's AMD result
-- (`answered_by`: human, machine_start, machine_end_beep, machine_end_silence, machine_end_other, fax,
-- unknown; free text, validated where it is received) and where and when the agent transferred them.
-- Inbound calls use the existing `direction` column ('inbound'; 'outbound' stays the default).

create table if not exists public.phone_numbers (
  id uuid primary key default gen_random_uuid(),
  number text not null unique check (number ~ '^\+[1-9][0-9]{6,14}$'),
  agent_id uuid not null references public.agents (id),
  inbound_enabled boolean not null default true,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index if not exists phone_numbers_agent_idx on public.phone_numbers (agent_id);

alter table public.calls add column if not exists answered_by text;
alter table public.calls add column if not exists transferred_to text;
alter table public.calls add column if not exists transferred_at timestamptz;

alter table public.phone_numbers enable row level security;
grant all on table public.phone_numbers to service_role;
