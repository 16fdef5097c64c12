"""Running trained models over images and videos, and drawing what they find."""
