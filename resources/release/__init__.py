"""The release stage: an Unsplash Lite release read, parsed and typed, and the photo catalog built from it."""
