package dispatch

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
)

// The header values every JSON answer carries, shared: a handler's
// header map takes them without allocating (a later Add appends to a
// new array, since their capacity is their length).
var (
	jsonContentType = []string{"application/json"}
	noSniff         = []string{"nosniff"}
)

// jsonBufs holds the buffers answers are encoded into; buffers that grew
// past maxPooledJSON (a whole-city heatmap) are left to the collector.
var jsonBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

const maxPooledJSON = 64 << 10

// writeJSON writes v as the JSON body of a status answer. The body is
// encoded before the status goes out, so a value that cannot be encoded
// is a 500, not a truncated 2xx.
func writeJSON(w http.ResponseWriter, status int, v any) {
	buf := jsonBufs.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= maxPooledJSON {
			jsonBufs.Put(buf)
		}
	}()
	if err := json.NewEncoder(buf).Encode(v); err != nil {
		WriteError(w, err)
		return
	}
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["X-Content-Type-Options"] = noSniff
	if buf.Len() > 2048 { // larger than net/http's own buffer: say the length instead of chunking
		h["Content-Length"] = []string{strconv.Itoa(buf.Len())}
	}
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}
