"""The bundled demo: simulators for the configured partners, and a client that submits sample
cases and shows them flow."""
