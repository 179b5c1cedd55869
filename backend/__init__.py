"""RelayX's REST backend: agents, calls, Twilio webhooks."""
