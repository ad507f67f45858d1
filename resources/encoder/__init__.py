"""The CLIP encoder: devices and precision, decoding, batching, the image runtimes and their agreement gate."""
