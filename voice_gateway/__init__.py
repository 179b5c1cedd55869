"""RelayX's voice gateway: Twilio Media Streams in, a spoken conversation out."""
