"""The contracts shared by trainer, gateway agent and simulator, defined once.

=================  ====================================================================
``frames``         ``Frame``, the block of samples every format decodes to; sequence numbers
``binary``         the binary frame (serial links, MQTT binary payloads)
``csv_lines``      the CSV line format (humans, slow links)
``mqtt_payload``   what an MQTT samples topic carries (a binary frame or the wire JSON), size limits
``json_mapping``   a sensor's own JSON through a declared mapping; ``PayloadDecoder``
``topics``         the MQTT topics
``preprocess``     samples → steps → windows → scaling (run by trainer *and* gateway)
``bundle``         the model bundle: manifest schema, atomic write, validated load
``threshold``      threshold methods (trainer calibration and ``edge-agent calibrate``)
``upload_record``  the window a gateway uploads for retraining
``errors``         the exception tree every boundary raises
``recordings``     loaders of recorded data (IMS, FEMTO, NAB, CSV, NPY, uploads) as ``Recording``
=================  ====================================================================

numpy and the standard library only: ``trainer`` and ``firmware_sim`` import the contract (and the
scorer, for parity), never the agent's runtime; nothing here imports ``trainer``.
"""
