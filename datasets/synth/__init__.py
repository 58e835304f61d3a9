"""The physics-based dual-energy X-ray baggage synthesiser and Threat Image Projection."""
