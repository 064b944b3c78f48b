"""Media files: PNG with the generation settings embedded, and MP4 videos of frames."""
