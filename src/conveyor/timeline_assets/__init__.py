"""The timeline page's stylesheet and scripts, read as package data."""
