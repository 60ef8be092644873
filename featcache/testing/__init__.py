"""Fixture writers that the test suite and the benchmarks share, as ``numpy.testing`` or ``torch.testing`` are.

Tests and benchmarks import these, never each other's files:

- :mod:`featcache.testing.formats`: tiny datasets in their real on-disk formats (CIFAR pickles, ImageFolder with
  odd image modes, iNat18 JSON, truncated JPEGs);
- :mod:`featcache.testing.jpegs`: an ImageFolder of distinct JPEG photos of varied sizes, 4:2:0 and 4:4:4;
- :mod:`featcache.testing.checkpoints`: networks and checkpoints in every layout featcache reads, and reference
  outputs taken straight from torchvision;
- :mod:`featcache.testing.stores`: feature stores written straight from arrays (and one in the old format v1);
- :mod:`featcache.testing.crash`: ``featcache extract`` killed at chosen moments, resumed and compared;
- :mod:`featcache.testing.s3`: a real S3 API (moto's server) on 127.0.0.1 for the remote-cache tests.

Each is imported on its own: the store writers need no torch.
"""
