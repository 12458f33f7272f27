package main

// Plots of the benchmark's results as plain SVG: grouped bars (one group
// per network and workload, one bar per mode) and a timeline per network.
// Written by hand rather than with a plotting module: two kinds of chart
// do not justify a dependency (see the README's dependency rule).

import (
	"fmt"
	"html"
	"math"
	"os"
	"path/filepath"
	"strings"
)

var palette = []string{"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"}

// barChart draws one horizontal bar per (cell, mode): value of the median
// row, labelled; missing cells are left out.
func barChart(title, unit string, o options, rows []row, figure func(row) int64, scale float64) string {
	const left, barH, gap, width = 260, 14, 10, 900
	type bar struct {
		label string
		value float64
		color string
	}
	var bars []bar
	var groups []int // index of each group's first bar
	maxV := 0.0
	for _, cell := range o.cells() {
		groups = append(groups, len(bars))
		for i, m := range o.modes {
			v, n := median(rows, cell[0], cell[1], m.Name, figure)
			if n == 0 {
				continue
			}
			fv := float64(v) / scale
			bars = append(bars, bar{label: cell[0] + " / " + cell[1] + " / " + m.Name, value: fv, color: palette[i%len(palette)]})
			maxV = math.Max(maxV, fv)
		}
	}
	if len(bars) == 0 || maxV == 0 {
		return ""
	}
	height := 40 + len(bars)*(barH+4) + len(groups)*gap + 30
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="10" y="20" font-size="14">%s</text>`+"\n", html.EscapeString(title))
	y := 36
	g := 0
	plotW := float64(width - left - 90)
	for i, br := range bars {
		if g < len(groups) && groups[g] == i {
			y += gap
			g++
			for g < len(groups) && groups[g] == i { // empty groups
				g++
			}
		}
		w := br.value / maxV * plotW
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`, left-6, y+barH-3, html.EscapeString(br.label))
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`, left, y, w, barH, br.color)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d">%.1f %s</text>`+"\n", float64(left)+w+4, y+barH-3, br.value, unit)
		y += barH + 4
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// timelineChart draws, for one network and workload, each mode's bytes on
// the migration link over time (solid) and, for modes that fetched, the
// destination's bytes read from storage (dashed): the first run of each.
func timelineChart(o options, rows []row, profile, workload string) string {
	const width, height, left, bottom, top, right = 900, 420, 70, 50, 40, 170
	type line struct {
		name   string
		color  string
		dashed bool
		pts    [][2]float64 // seconds, MiB
	}
	var lines []line
	maxT, maxY := 0.0, 0.0
	for i, m := range o.modes {
		for _, r := range rows {
			if r.Profile != profile || r.Workload != workload || r.Mode != m.Name || r.Error != "" || len(r.Timeline) == 0 {
				continue
			}
			link := line{name: m.Name + " link", color: palette[i%len(palette)]}
			fetch := line{name: m.Name + " fetched", color: palette[i%len(palette)], dashed: true}
			for _, s := range r.Timeline {
				t := float64(s.Ms) / 1000
				link.pts = append(link.pts, [2]float64{t, float64(s.LinkBytes) / (1 << 20)})
				fetch.pts = append(fetch.pts, [2]float64{t, float64(s.FetchBytes) / (1 << 20)})
				maxT = math.Max(maxT, t)
				maxY = math.Max(maxY, math.Max(float64(s.LinkBytes), float64(s.FetchBytes))/(1<<20))
			}
			lines = append(lines, link)
			if r.FetchBytes > 0 {
				lines = append(lines, fetch)
			}
			break // the first run that completed
		}
	}
	if len(lines) == 0 || maxT == 0 || maxY == 0 {
		return ""
	}
	pw, ph := float64(width-left-right), float64(height-top-bottom)
	x := func(t float64) float64 { return float64(left) + t/maxT*pw }
	y := func(v float64) float64 { return float64(top) + ph - v/maxY*ph }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="10" y="20" font-size="14">%s</text>`+"\n",
		html.EscapeString(fmt.Sprintf("%s, %s: MiB on the migration link (solid) and read from storage by the destination (dashed)", profile, workload)))
	fmt.Fprintf(&b, `<line x1="%d" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>`, left, float64(top)+ph, float64(left)+pw, float64(top)+ph)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%.0f" stroke="black"/>`+"\n", left, top, left, float64(top)+ph)
	for i := 0; i <= 5; i++ {
		t, v := maxT*float64(i)/5, maxY*float64(i)/5
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">%.1f s</text>`, x(t), float64(top)+ph+16, t)
		fmt.Fprintf(&b, `<text x="%d" y="%.0f" text-anchor="end">%.0f</text>`+"\n", left-4, y(v)+4, v)
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%d" text-anchor="middle">time since migrate</text>`, float64(left)+pw/2, height-10)
	for i, l := range lines {
		var pts []string
		for _, p := range l.pts {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(p[0]), y(p[1])))
		}
		dash := ""
		if l.dashed {
			dash = ` stroke-dasharray="6,4"`
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", l.color, dash, strings.Join(pts, " "))
		ly := top + 10 + i*16
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>`, width-right+10, ly, width-right+34, ly, l.color, dash)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", width-right+38, ly+4, html.EscapeString(l.name))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// writePlots writes total-time.svg, link-bytes.svg and one timeline per
// network and workload into dir; it returns the files written.
func writePlots(dir string, o options, rows []row) ([]string, error) {
	files := map[string]string{
		"total-time.svg": barChart("Total migration time (median), ms", "ms", o, rows, func(r row) int64 { return r.TotalTimeMs }, 1),
		"link-bytes.svg": barChart("Bytes on the migration link (median), MiB", "MiB", o, rows,
			func(r row) int64 { return r.TransferredBytes }, 1<<20),
	}
	for _, cell := range o.cells() {
		files[fmt.Sprintf("timeline-%s-%s.svg", cell[0], cell[1])] = timelineChart(o, rows, cell[0], cell[1])
	}
	var written []string
	for name, svg := range files {
		if svg == "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(svg), 0o644); err != nil {
			return written, err
		}
		written = append(written, name)
	}
	return written, nil
}
