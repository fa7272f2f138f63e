"""Reporters: turn a Report into JSON, or into text for a person."""
