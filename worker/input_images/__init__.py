"""Input images (img2img, masks, extras, png-info): checked, and fetched when URLs are allowed, before use."""
