"""A sensor node gone wrong: floods an MQTT topic as fast as it can (bench/bench_flood.py, tests/e2e/test_flood.py).

    python bench/flooder.py HOST PORT TOPIC messages|big-json

``messages``: valid binary wire frames (256 samples x 4 channels) at QoS 1; ``big-json``: the largest valid wire
JSON payload (4096 samples x 16 channels, 2.4 MB). It runs at the lowest CPU priority: on a real gateway the
flooding node is a device on the network, whose CPU is not the gateway's.
"""

import os
import sys

import numpy as np
import paho.mqtt.client as mqtt

from edge_agent.contract.binary import encode_frame, int16_scale
from edge_agent.contract.mqtt_payload import encode_json_payload


def main() -> None:
    host, port, topic, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    os.nice(19)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"flooder-{mode}-{os.getpid()}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(2000)
    client.connect(host, port)
    client.loop_start()
    rng = np.random.default_rng(0)
    if mode == "messages":
        x = (0.1 * rng.standard_normal((256, 4))).astype(np.float32)
        payloads = [encode_frame(i * 256, x, scale=int16_scale(10.0)) for i in range(4096)]
    else:
        payloads = [encode_json_payload(0, rng.standard_normal((4096, 16)).astype(np.float32))]
    i = 0
    while True:
        client.publish(topic, payloads[i % len(payloads)], qos=1)
        i += 1


if __name__ == "__main__":
    main()
