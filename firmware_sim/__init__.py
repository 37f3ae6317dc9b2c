"""Sensor-firmware stand-in: realistic accelerometer streams over serial and MQTT.

signals.py (Lorenz, bearing, replay) -> faults.py (injection + ledger) -> stream.py (framing,
pacing) -> link.py (pty, pyserial URL, MQTT) ; cli.py is ``firmware-sim``.
The wire format is ``edge_agent.contract.wire``.
"""
