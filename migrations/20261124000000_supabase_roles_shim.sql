-- Supabase's API roles exist on every Supabase project; plain PostgreSQL lacks them.
-- This shim creates them (without login) only where they are missing, so the migrations
-- that follow apply unchanged to both. On Supabase it does nothing.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
end
$$;
