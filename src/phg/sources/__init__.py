"""Sources: each transport turns its own wire format into model.Readings (and knows nothing of FHIR)."""
