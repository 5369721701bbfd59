"""The proxy: route a request to an instance and stream it there and back."""
