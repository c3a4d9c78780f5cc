"""Partner simulators: real servers (or folders, or databases) that play a province's system on
loopback, one module per exchange style, for the demo, the tests and the benchmark."""
