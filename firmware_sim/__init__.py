"""Sensor-firmware stand-in: realistic accelerometer streams over serial and MQTT.

signals.py (Lorenz, bearing, replay) -> faults.py (injection + ledger) -> stream.py (framing,
pacing) -> link.py (pty, pyserial URL, MQTT) ; cli.py is ``firmware-sim``. The other parts of a plant that
demos, benches and tests stand up: broker.py (a loopback mosquitto) and browser.py (headless Chromium).
The wire formats are in ``edge_agent.contract`` (``frames``, ``binary``, ``csv_lines``, ``mqtt_payload``,
``json_mapping``).
"""
