"""phg: a Personal Health Gateway.

Readings from personal health devices become HL7 FHIR resources per the Personal Health Device
Implementation Guide and reach the EHR through a durable queue with SMART Backend Services auth.
The pipeline: sources -> model -> mapping -> outbox -> delivery (see docs in the README).
"""

__version__ = "0.1.0"
