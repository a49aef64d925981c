"""The autoencoder family: networks, their training and their saved form."""
