-- Transcript rows for the agent's tool calls (speaker 'tool'): a call's record shows, in order with
-- what was said, each action the agent took (a lookup, a transfer, keys pressed, hanging up) and its
-- result. The text is a one-line summary; metrics hold the tool, its arguments and the full result.

alter table public.transcripts drop constraint if exists transcripts_speaker_check;
alter table public.transcripts add constraint transcripts_speaker_check
  check (speaker in ('agent', 'caller', 'tool'));
