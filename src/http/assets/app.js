// sensorlink dashboard: plain JS, no external fetch (issue 9).
