"""sensor-monitor: a streaming time-series anomaly monitor.

Readings arrive from Kafka, are cut into per-entity event-time windows, scored by an
autoencoder's reconstruction error, compared with an adaptive threshold and turned into
alarm episodes, which are published as CloudEvents-shaped anomaly events.

The contract every part keeps:

- A higher score means more anomalous. Scores are reconstruction errors of the model in its
  normalised units; thresholds are in the same units.
- Warm-up never raises and never alarms: until a window is full, or a threshold has seen enough
  data, the answer is "not anomalous".
- The state of the streaming core (windows, thresholds, episodes) can be snapshotted and restored;
  a restored detector makes exactly the decisions an uninterrupted one would have made.
"""

__version__ = "0.1.0"
