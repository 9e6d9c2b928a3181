"""Unit tests of echokit.servers: configuration, hooks and patches, without starting a server process."""
