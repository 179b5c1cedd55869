"""RelayX's shared package: settings, storage, audio and the model engines both services use."""
