"""Search with a trained model: index a collection, search it from the command line, or browse
it on a local web page. ``engine`` holds the logic; ``cli`` and ``app`` are thin layers."""

# Refuse images with more pixels than this before decoding them (decompression-bomb guard).
DEFAULT_MAX_PIXELS = 40_000_000
