"""The contracts shared by trainer, gateway agent and simulator, defined once.

=================  ====================================================================
``frames``         ``Frame``, the block of samples every format decodes to; sequence numbers
``binary``         the binary frame (serial links, MQTT binary payloads)
``csv_lines``      the CSV line format (humans, slow links)
``mqtt_payload``   what an MQTT samples topic carries (a binary frame or the wire JSON), size limits
``json_mapping``   a sensor's own JSON through a declared mapping; ``PayloadDecoder``
``topics``         the MQTT topics and the ids in them
``preprocess``     samples → steps → windows → scaling (run by trainer *and* gateway)
``bundle``         the model bundle: manifest schema, atomic write, validated load
``interpreter``    the TFLite interpreter from the light runtime (bundle check, scorer, trainer parity)
``native_notices`` drops known native notices (the runtime's XNNPACK line) from file descriptor 2
``threshold``      threshold methods (trainer calibration and ``edge-agent calibrate``)
``upload_record``  the window a gateway uploads for retraining
``errors``         the exception tree every boundary raises
``signing``        Ed25519 keys and signed fields (rollouts, receipts)
``rollout``        the signed model rollout over MQTT: retained chunks and signed metadata
``receipt``        a collector's signed upload receipt (records held, records refused)
``recordings``     loaders of recorded data (IMS, FEMTO, NAB, CSV, NPY, uploads) as ``Recording``
=================  ====================================================================

What the contract may import, and nothing else (tests/test_architecture.py enforces it): the standard
library, other ``edge_agent.contract`` modules, ``numpy``, ``cryptography`` (signing, rollout, receipt) and,
inside ``interpreter``'s functions only, a TFLite runtime (``ai_edge_litert`` or ``tflite_runtime``; never
TensorFlow). ``trainer`` and ``firmware_sim`` import the contract (and the scorer, for parity), never the
agent's runtime; nothing here imports ``trainer``, ``firmware_sim`` or the rest of ``edge_agent``.
"""
