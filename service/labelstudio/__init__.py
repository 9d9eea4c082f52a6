"""A Label Studio ML backend: ``config`` reads the labeling config, ``fetch`` gets task images
(within the allowed hosts), ``results`` builds predictions, ``routes`` serves them."""
