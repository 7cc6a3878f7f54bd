"""Data sources: name -> `load(*, seed, **kwargs) -> Dataset`."""

from fedcomp.data.sources import digits, idx, random_images, synthetic, tfds_source

SOURCES = {
  'digits': digits.load,
  'idx': idx.load,
  'tfds': tfds_source.load,
  'synthetic': synthetic.load,
  'random': random_images.load,
}
