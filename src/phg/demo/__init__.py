"""Demo support: launchers for the real third-party peers phg talks to (FHIR servers, OAuth server, gate)."""
