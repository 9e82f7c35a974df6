"""The run's metric writers: TensorBoard events leave the training loop's thread (issue 29: on
gs:// every flush re-uploads the whole event file)."""

import struct
import threading

from z1_jax.train.metrics import MetricsLog


def _events(directory):
  """(tag, step, value) of every scalar in the TFRecord event files under `directory`."""
  from tensorboardX.proto import event_pb2
  out = []
  for path in sorted(directory.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    while data:
      (length,) = struct.unpack("<Q", data[:8])
      event = event_pb2.Event.FromString(data[12:12 + length])
      data = data[12 + length + 4:]
      out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
  return out


def test_tensorboard_is_flushed_by_the_writer_thread_on_an_interval(tmp_path, monkeypatch):
  from tensorboardX import event_file_writer
  flushes = []
  original = event_file_writer.EventsWriter.flush

  def spy(self):
    flushes.append(threading.current_thread())
    return original(self)

  monkeypatch.setattr(event_file_writer.EventsWriter, "flush", spy)
  log = MetricsLog(tmp_path, 0, True)
  for step in range(1, 51):
    log.write({"step": step, "loss": 1.0 / step})
  # the loop's thread never flushes; the writer thread flushed once (its first event) at most
  assert threading.main_thread() not in flushes and len(flushes) <= 1
  log.close()  # the last flush, with every step
  assert [s for tag, s, _ in _events(tmp_path / "tb") if tag == "train/loss"] == list(
      range(1, 51))
  assert MetricsLog.tb_flush_secs == 60
