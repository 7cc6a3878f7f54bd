"""Data sources: name -> `load(*, seed, **kwargs) -> Dataset`."""

from fedcomp.data.sources import digits, idx, synthetic, tfds_source

SOURCES = {
  'digits': digits.load,
  'idx': idx.load,
  'tfds': tfds_source.load,
  'synthetic': synthetic.load,
}
