"""The HTTP edge: authentication, thin handlers over the service layer, problem+json."""
