"""What every level shares: errors, files, deadlines, progress lines, QMP, the reaper."""
