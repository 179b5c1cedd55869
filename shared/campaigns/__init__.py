"""Campaigns: many outbound calls of one agent, placed under limits, retried by rules, never to a
number on the do-not-call list.

- `config`: what a campaign is told (limits, calling window, retry rules, contacts), validated.
- `csv_import`: contacts from a CSV upload, every bad row named by its row number.
- `schedule`: when a calling window is open, and when it opens next.
- `outcomes`: what a finished call means for its contact (retry, done, do-not-call).
- `store`: the campaign tables, and the claim of due contacts with `for update skip locked`.
- `dispatch`: the periodic job that claims due contacts and dials them.
"""
