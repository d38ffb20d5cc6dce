;;; build-concurrent.scm -- one of two clients that build the same
;;; derivation at the same time (the Rust side starts both, on a daemon
;;; without a chroot): it builds `shared-build', whose builder takes a few
;;; seconds and appends a line to `$GUIXD_IT_DIR/work/shared/runs' each
;;; time it runs, and records how many builds it saw start.  The builder
;;; must have run once.

(load (string-append (dirname (current-filename)) "/build-common.scm"))

;; The other client uses the same scratch directory: keep apart.
(set! %work-counter (* 1000000 (getpid)))

(define s (connect))
(set-build-options s #:use-substitutes? #f #:verbosity 1)
(define bb (add-busybox! s))

(define shared-build
  (sh-derivation s bb "shared-build"
                 (string-append
                  "echo building shared; echo run >> " (it-dir)
                  "/work/shared/runs; sleep 3; mkdir $out; echo done > $out/v")))
(record! "drv" (drv-file shared-build))
(expect-built! "build" s (list shared-build) #:record-log? #f)
(record! "builds started" (count-traces %last-log "@ build-started"))
(record-outputs! "build" s shared-build)
(finish!)
