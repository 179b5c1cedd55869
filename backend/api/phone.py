"""Placeholder router (filled in by the phone work)."""

from fastapi import APIRouter

router = APIRouter()
