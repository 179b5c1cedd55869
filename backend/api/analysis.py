"""Placeholder router (filled in by the analysis work)."""

from fastapi import APIRouter

router = APIRouter()
