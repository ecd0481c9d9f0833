"""Neural renderers (Deep Video Portraits, Neural Voice Puppetry, 2D methods). Populated by later releases."""

__all__: list = []
