"""The compiled, immutable configuration a node serves from: plain frozen data, no behaviour."""
